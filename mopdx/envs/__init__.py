"""Multi-turn environments: the contract (``base``), episodes (``episodes``), the config node (``settings``)."""
