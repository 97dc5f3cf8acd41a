"""Clinical evaluation: typed facts in, typed findings out. Knows nothing of HTTP or FHIR JSON.

- facts.py: PatientFacts and what they hold (Measurement, ConditionFact, MedicationFact).
- findings.py: Finding and each finding's typed template variables.
- common.py: reading facts without guessing (latest usable values, future or unread results).
- vitamin_d.py, bone.py (DXA and screening), sarcopenia.py, combined.py (osteosarcopenia):
  one module per domain; evaluate.py runs them in order.
"""
