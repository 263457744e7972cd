"""Run plumbing: the run context and its narrow protocol, runner, parallel runs, resource ledger."""
