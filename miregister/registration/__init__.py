"""Registration: ``register(fixed, moving)``, ``register_batch`` (B pairs in one batched pass), its options and its result."""
from ..errors import RegistrationError
from .options import RegistrationOptions, StageOptions
from .batch import register_batch
from .register import IterationInfo, register
from .result import RegistrationResult

__all__ = ["register", "register_batch", "IterationInfo", "RegistrationResult", "RegistrationOptions", "StageOptions", "RegistrationError"]
