"""raft's benchmarks: ``python -m benchmarks`` runs the suite (see benchmarks/suite.py);
the scripts beside it each measure one thing on their own."""
