"""Names of the Python engines built into livecalc-worker-py.

A DAG names an engine either by one of these names or as ``python:package.module:ClassName``.
"""

BUILTIN = {
    "python_hello": "livecalc.engines.hello:HelloEngine",
    "python_esg": "livecalc.engines.esg:EsgEngine",
    "python_solver": "livecalc.engines.solver:SolverEngine",
}


def resolve(engine_type: str) -> str:
    """Map a DAG engine type to ``module:Class``."""
    if engine_type.startswith("python:"):
        target = engine_type[len("python:"):]
    else:
        target = BUILTIN.get(engine_type, "")
    if ":" not in target:
        raise LookupError(f"no Python engine registered as {engine_type!r}")
    return target
