"""VM drivers: each knows one hypervisor and nothing else (devenv/backends/vm/driver.py says what one answers)."""
