"""Pure tensor functions: masked statistics, KL estimators, advantage estimators, losses, sampling.

Nothing here holds state or touches a model; every function is unit-tested against numbers computed
by hand (tests/test_ops_*.py).
"""
