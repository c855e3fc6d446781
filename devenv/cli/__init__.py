"""The command line: thin commands, one error boundary, a fast path for hot commands."""
