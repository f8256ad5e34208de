"""ConvNeXt V2: the network, its layers and CPU kernels, and conversion of published weights."""
