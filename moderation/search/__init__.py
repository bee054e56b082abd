"""Search over stored image embeddings: by text, by an image, or "more like this" from a stored item.

`index` holds the vector indexes behind one `VectorIndex` protocol (an exact scan and a faiss one, so a
vector database can replace either), `service` the `SearchIndex` that builds one from the database and
keeps it up to date, `queries` the query vectors (text tower, image tower, a stored embedding).
"""

from moderation.search.index import ExactIndex, FaissIndex, VectorIndex
from moderation.search.service import Filters, Hit, SearchIndex

__all__ = ["ExactIndex", "FaissIndex", "Filters", "Hit", "SearchIndex", "VectorIndex"]
