"""The guest agent: agent.py is copied into the guest (stdlib only); protocol.py is the host's side."""
