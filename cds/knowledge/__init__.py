"""The clinical knowledge in rules/*.yaml, loaded and validated at start-up.

- vocabulary.py: every name the code and the YAML share (kinds, sites, measures, finding codes,
  flags, template variables), checked against rules/ in both directions.
- loader.py: reading one file (safe YAML + marshmallow schema) and RulesError.
- intervals.py: Interval (thresholds, plausible ranges) and Criterion (a range and its citation).
- citations.py, vitamin_d.py, bone.py, sarcopenia.py, card_text.py: one module per rules file,
  each a schema whose post_load builds frozen dataclasses.
- terminology.py: value sets, units and data-quality limits (valuesets/units/data_quality.yaml).
- rules.py: load_rules() — every file, checked against each other, profiles picked → Rules.
"""
