"""Write-side services of the cases app, split by domain (one module each)."""
