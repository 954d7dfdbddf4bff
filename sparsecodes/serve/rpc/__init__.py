"""The Open Inference Protocol over gRPC (``SPARSECODES_GRPC_PORT``): ``oip.proto`` and the modules that
grpcio-tools generates from it (committed; regenerate with ``make grpc-protos``), and the service."""
