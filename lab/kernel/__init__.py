"""Kernel adapters: capture, recording, sock_diag, impairments, injection, scripted peer, agents,
socket options, hosts."""
