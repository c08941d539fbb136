"""Fund posting: who owes whom for a settlement (routing, pure) and the worker that books it."""
