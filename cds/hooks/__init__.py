"""CDS Hooks: the wire schemas of requests, responses and feedback, and the services offered."""
