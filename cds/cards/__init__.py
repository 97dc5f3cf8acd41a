"""The one card builder: findings → CDS Hooks cards and suggestions."""
