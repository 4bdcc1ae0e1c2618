"""Independent references for the tests: plain NumPy loops, no JAX."""

import numpy as np

NP_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
    "identity": lambda z: z,
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "abs": np.abs,
}


def simulate_loop(W, F, b, C, h0, x, activation="relu"):
  """Eq. (1) of the paper, one sequence and one step at a time."""
  phi = NP_ACTIVATIONS[activation]
  W, F, b, C, h0, x = (np.asarray(v, dtype=np.float64) for v in (W, F, b, C, h0, x))
  batch_shape = x.shape[:-2]
  flat = x.reshape((-1,) + x.shape[-2:])
  out = np.zeros((flat.shape[0], flat.shape[1], C.shape[0]))
  for i, seq in enumerate(flat):
    h = h0.copy()
    for k, x_k in enumerate(seq):
      h = phi(W @ h + F @ x_k + b)
      out[i, k] = C @ h
  return out.reshape(batch_shape + out.shape[1:])
