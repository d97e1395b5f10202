"""See DESIGN.md section 3."""
