"""Reaching the guest over SSH.

`ssh` holds the paramiko connection (import it only where a connection is
needed: paramiko costs ~230 ms to import). `cpspec` and `sshconfig` are the
parts the CLI needs without a connection and import nothing heavy.
"""
