"""Models: where one comes from (sources), what a precision means (precision), loading it (loading),
sharing loaded ones between pages and sessions (registry), and reading its shape without weights (architecture)."""
