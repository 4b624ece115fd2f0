"""Publishing a run: its model card (with the loss curve), evaluation records, and pushing it to the Hub."""
