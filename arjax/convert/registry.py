"""The converter registry (its own module, so that converters register without importing the
package that imports them)."""
from arjax.registry import Registry

CONVERTERS: Registry = Registry("converter")
