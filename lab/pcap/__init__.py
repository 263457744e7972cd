"""Capture files: reading pcap/pcapng (Python and compiled walk), writing annotated pcapng."""
