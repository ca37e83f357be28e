"""The client's facets: one job each, over one shared :class:`~saltline.client_sdk.context.DeviceContext`.
Their rules live in :mod:`saltline.client_sdk.core`; a facet gathers inputs, applies a decision in one
store transaction and publishes its events after the commit."""
