"""Independent judges for the analyzer (issue 12): real-kernel scenarios whose truth comes from the kernel.

`scenarios` builds each case against the real kernel (the scripted TUN peer or two lab namespaces), captures
it and records what the kernel did (inet_sock_set_state transitions, sock_diag, errno); `verdict` reads the
analyzer's report in the same terms and lists where it disagrees with the expectation derived from that truth.
`make.py` writes the captures and truth files into tests/data/judges/.
"""
