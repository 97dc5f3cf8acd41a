"""The HTTP layer: the Flask app factory, routing, body parsing, CORS, errors → responses."""
