"""FHIR in: gather (prefetch, or the FHIR server within budgets) and normalize (resources → facts)."""
