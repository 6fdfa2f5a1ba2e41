import os

import jax


jax.config.update("jax_enable_x64", True)
# Commands run by the tests start no resident server (tests/test_server.py does).
os.environ["MANIFOLDFLOW_SERVER"] = "0"
