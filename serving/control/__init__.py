"""The control plane (layer 5): deployers (local, Kubernetes), Kubernetes manifests
(:mod:`~serving.control.inference_service`, :mod:`~serving.control.autoscaling`,
:mod:`~serving.control.secret`, :mod:`~serving.control.crd`, :mod:`~serving.control.apply`),
the rollout controller and its windows, and the gateway's routes and who owns them
(:mod:`~serving.control.routes`). Used by ``ops/``; the serving runtime never imports it."""
