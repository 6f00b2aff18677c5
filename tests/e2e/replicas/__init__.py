"""Scale-out end-to-end suite: gateway replicas behind HAProxy (``just e2e-replicas``)."""
