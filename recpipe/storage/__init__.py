"""The one owner of file operations on recpipe state, for plain paths and Hadoop URIs.

- :mod:`recpipe.storage.location`: :class:`Location`, path algebra without I/O;
- :mod:`recpipe.storage.files`: every read, write, listing and removal (``pyarrow.fs``,
  no JVM), configured from the Hadoop settings Spark gets (:mod:`~.filesystems`);
- :mod:`recpipe.storage.hadoop`: listings through the Spark session's Hadoop ``FileSystem``
  (raw input, which executors read through Hadoop too). Imported on its own: it needs pyspark.

No other recpipe module calls ``os``/``pathlib``/``shutil``/``open``/``glob`` on state.
"""

from recpipe.storage.files import (
    Entry,
    arrow_path,
    copy_file,
    create_exclusive,
    delete,
    exists,
    glob,
    is_dir,
    is_file,
    list_dir,
    makedirs,
    open_input,
    read_bytes,
    read_json,
    read_text,
    remove_tree,
    size,
    write_bytes,
    write_json,
    write_streamed,
    write_text,
)
from recpipe.storage.filesystems import (
    SCHEMES,
    StorageError,
    check_scheme,
    configure,
    hadoop_settings,
    resolved_location,
)
from recpipe.storage.location import Location, LocationLike, as_location, scheme_of

__all__ = [
    "SCHEMES",
    "Entry",
    "Location",
    "LocationLike",
    "StorageError",
    "arrow_path",
    "as_location",
    "check_scheme",
    "configure",
    "copy_file",
    "create_exclusive",
    "delete",
    "exists",
    "glob",
    "hadoop_settings",
    "is_dir",
    "is_file",
    "list_dir",
    "makedirs",
    "open_input",
    "read_bytes",
    "read_json",
    "read_text",
    "remove_tree",
    "resolved_location",
    "scheme_of",
    "size",
    "write_bytes",
    "write_json",
    "write_streamed",
    "write_text",
]
