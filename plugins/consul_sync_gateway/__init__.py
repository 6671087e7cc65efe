"""The built-in Gateway API plugin: HTTPRoutes and GRPCRoutes for synced services.

* :mod:`.plugin` -- the entry point; :mod:`.checks` -- checks of the settings.
* :mod:`.routes` -- desired service -> its routes (pure), and ``differs``.
* :mod:`.sink` -- the ``gateway`` sink: wiring, start-up, writes, errors, Events;
  :mod:`.config` its settings, :mod:`.metrics` its metrics.
* :mod:`.view` -- per desired service, whether its routes are in place.
* :mod:`.status` -- whether the gateways accept our routes.
* Client, informer and ownership come from :mod:`consul_sync_kube`.
"""
