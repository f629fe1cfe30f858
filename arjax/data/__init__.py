"""Input pipelines on grain: sources, preprocessing strings, sharded resumable iterators.

    from arjax import data
    cfg = data.default_config()                      # config.data
    info = data.dataset_info(cfg)                    # image_shape, num_classes, num_examples
    it = data.make_iterator(cfg, "train", global_batch_size=64, seed=0)
    batch = next(it)                                 # image uint8 [b, H, W, C], label int32 [b]
    state = it.get_state(); it.set_state(state)      # JSON-serialisable

See pipeline.py (order, sharding, state), sources.py (data.source schemes and file layouts)
and preprocess.py (data.pp ops).
"""
from arjax.data.pipeline import DataIterator
from arjax.data.pipeline import dataset_info
from arjax.data.pipeline import default_config
from arjax.data.pipeline import make_iterator
from arjax.data.preprocess import PP_OPS
from arjax.data.sources import SOURCES
from arjax.data.sources import open_source
from arjax.data.sources import write_array_record

__all__ = ["DataIterator", "PP_OPS", "SOURCES", "dataset_info", "default_config",
           "make_iterator", "open_source", "write_array_record"]
