"""Models: where one comes from (sources; catalog, hub), which ones public mode admits (public), what a precision
means (precision), loading it (loading), the bytes a loaded model holds (measure), sharing loaded ones between
pages and sessions (registry), and reading its shape without weights (reader, architecture). Their order:
docs/layers.md."""
