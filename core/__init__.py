"""Pure decisions of ESGD: the run spec, schedules, selection, draws and the store's key layout.

Nothing here imports torch, boto3, hera or kubernetes (tests/test_architecture.py enforces it),
so every decision can be tested and reused by the local and the Argo backends alike.
"""
