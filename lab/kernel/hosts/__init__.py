"""Where the lab's endpoints live: the loopback host (default) or lab network namespaces (lab.kernel.hosts.netns)."""
