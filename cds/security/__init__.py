"""Client authentication: JWT verification, trusted clients, JWKS, the jti replay cache."""
