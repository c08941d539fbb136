"""Splitting a recorded settlement again, with exactly what it was split with: the policy, catalog and
institution registry versions it recorded and the version of the person's record. Used by corrections
(re-adjudicating later settlements) and by the auditor. Everything is loaded first; the Resplit function
it returns is pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.settlement_store import SettlementStore
from gateway.engine import Rejected, Rejection, SplitOutcome, split
from gateway.engine.claims import parse_claim_institution, split_claim
from gateway.engine.corrections import Resplit, SettlementInputs
from gateway.engine.model import Catalog, Institution, Person, PersonState, StayTotals
from gateway.engine.policy import Policy
from rules_cache.reader import DataError


class VersionSource(Protocol):
    """Where published versions come from (rules_cache.static_data.StaticCache, or a fixed set)."""

    async def load(self, kind: str, region: str, version: str) -> Any: ...


@dataclass
class RecordedRules:
    """The static data versions and person records a set of settlements names, loaded."""

    person_id: str
    insured_region: str
    policies: dict[str, Policy] = field(default_factory=dict)  # by version
    catalogs: dict[tuple[str, str], Catalog] = field(default_factory=dict)  # (region, version)
    institutions: dict[str, dict[str, Institution]] = field(default_factory=dict)  # by registry version
    persons: dict[str, Person] = field(default_factory=dict)  # by record digest
    missing: list[str] = field(default_factory=list)

    def resplit(self, inputs: SettlementInputs, state: PersonState, stay: StayTotals) -> SplitOutcome:
        policy = self.policies.get(inputs.policy_version)
        claim = parse_claim_institution(inputs.institution)
        if claim is not None:  # a claim after the fact: its receipts are its lines, no catalog
            person = self.persons.get(inputs.person_digest)
            if policy is None or person is None:
                return Rejected(Rejection.REGION_NOT_SERVED, f"the rules of a claim are gone: {self.missing}")
            return split_claim(inputs.bill, *claim, policy, person, state, inputs.on, stay)
        registry = self.institutions.get(inputs.institutions_version, {})
        inst = registry.get(inputs.institution)
        person = self.persons.get(inputs.person_digest)
        catalog = self.catalogs.get((inst.region, inputs.catalog_version)) if inst else None
        if policy is None or inst is None or person is None or catalog is None:
            return Rejected(
                Rejection.REGION_NOT_SERVED,
                f"the rules or the person record a settlement was split with are gone: {self.missing}",
            )
        return split(inputs.bill, policy, catalog, inst, person, state, inputs.on, stay)


async def load_rules(
    static: VersionSource,
    store: SettlementStore,
    person_id: str,
    insured_region: str,
    inputs: Iterable[SettlementInputs],
) -> tuple[RecordedRules, Resplit]:
    rules = RecordedRules(person_id, insured_region)
    for i in inputs:
        try:
            if i.policy_version not in rules.policies:
                rules.policies[i.policy_version] = await static.load(
                    "policy", insured_region, i.policy_version
                )
            if i.institutions_version not in rules.institutions:
                rules.institutions[i.institutions_version] = await static.load(
                    "institutions", "-", i.institutions_version
                )
            inst = rules.institutions[i.institutions_version].get(i.institution)
            if inst is not None and (inst.region, i.catalog_version) not in rules.catalogs:
                rules.catalogs[(inst.region, i.catalog_version)] = await static.load(
                    "catalog", inst.region, i.catalog_version
                )
        except DataError as exc:
            rules.missing.append(str(exc))
        if i.person_digest not in rules.persons:
            person = await store.person_version(person_id, i.person_digest)
            if person is None:
                rules.missing.append(f"person record version {i.person_digest}")
            else:
                rules.persons[i.person_digest] = person
    return rules, rules.resplit
