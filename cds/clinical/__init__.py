"""Clinical evaluation: typed facts in, typed findings out. Knows nothing of HTTP or FHIR JSON."""
