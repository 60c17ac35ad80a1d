"""Human feedback: the campaign store, quality control, the labelling web app and its clients."""
