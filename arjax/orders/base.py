"""Order registry."""
from arjax.registry import Registry

ORDERS: Registry = Registry("order")


def build_order(config, tokenizer):
  return ORDERS.get(config.order.name, field="order.name")(config, tokenizer)
