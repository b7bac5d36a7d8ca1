"""Built-in kernels: one module each, an IR emitter plus its numpy reference."""

BUILTIN = {
    "pq_assign": "helix_jit.kernels.pq_assign",
    "pq_argmin": "helix_jit.kernels.pq_argmin",
    "pq_decode": "helix_jit.kernels.pq_decode",
    "adc_matvec": "helix_jit.kernels.adc_matvec",
    "fwht": "helix_jit.kernels.fwht",
    "kmeanspp_draws": "helix_jit.kernels.kmeanspp",
    "grid_errors": "helix_jit.kernels.grid_errors",
}
