"""The national platform's interface (国家医疗保障信息平台 定点医药机构接口) over HTTP: the JSON envelope,
its transactions, its signing schemes. A translation layer only: every transaction is answered by the same
servicer and service objects as gRPC, in the same process (docs/NATIONAL_MAPPING.md)."""
