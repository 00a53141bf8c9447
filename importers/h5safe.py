"""HDF5 files from users, checked so that nothing outside their own bytes can be read.

HDF5 lets a file point elsewhere: a dataset with *external storage* reads its bytes from any
path on the machine (``create_dataset(..., external=[("/etc/passwd", 0, 32)])``), an *external
link* opens another HDF5 file, a *virtual dataset* maps other files' datasets, and a filter id
nobody registered makes the library load a plugin. :func:`check_h5` walks every link (without
following it) and every dataset's creation property list, and refuses all of those before a
single dataset is read. Keras ``.h5``, ``.weights.h5`` and the ``model.weights.h5`` inside a
``.keras`` archive all go through it (:func:`open_h5`).
"""

from __future__ import annotations

from typing import Any

from morphscope.errors import UnsafeFileError, UnsupportedFileError
from morphscope.importers.limits import DEFAULT_LIMITS, Limits, check_tensor_shape, describe_error

MAX_H5_OBJECTS = 1_000_000  # groups + datasets + links walked in one file
# Filters HDF5 or h5py implement themselves: deflate, shuffle, fletcher32, szip, nbit,
# scaleoffset, lzf. Any other id would load a plugin library.
BUILTIN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})
_H5_ERRORS = (OSError, ValueError, KeyError, RuntimeError, TypeError)  # h5py's errors on corrupt files


def check_h5(h5file: Any, name: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse an open ``h5py.File`` that points outside itself or declares oversized data.

    Parameters
    ----------
    h5file : h5py.File
        Opened read-only; nothing in it has been read yet.
    name : str
        The user's name for the file, used in messages.

    Raises
    ------
    UnsafeFileError
        An external link, a soft link, a dataset with external storage, a virtual dataset or a
        filter that is not built in; one line naming the file and the object.
    UnsupportedFileError
        A dataset over ``limits.max_tensor_bytes``, too many objects, or a corrupt file.
    """
    import h5py

    seen: set[Any] = set()
    stack = [("", h5file)]
    walked = 0
    while stack:
        path, group = stack.pop()
        for key in group:
            walked += 1
            if walked > MAX_H5_OBJECTS:
                raise UnsupportedFileError(f"{name}: more than {MAX_H5_OBJECTS:,} HDF5 objects")
            where = f"{path}/{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise UnsafeFileError(f"{name}: refused, HDF5 object {where} is an external link to "
                                      f"another file; only data inside the file is read")
            if isinstance(link, h5py.SoftLink):
                raise UnsafeFileError(f"{name}: refused, HDF5 object {where} is a soft link "
                                      f"(to {link.path}); only plain groups and datasets are read")
            obj = group.get(key)
            if obj is None or obj.id in seen:
                continue
            seen.add(obj.id)
            if isinstance(obj, h5py.Dataset):
                _check_dataset(obj, where, name, limits)
            elif isinstance(obj, h5py.Group):
                stack.append((where, obj))


def _check_dataset(dataset: Any, where: str, name: str, limits: Limits) -> None:
    import h5py

    plist = dataset.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise UnsafeFileError(f"{name}: refused, HDF5 dataset {where} is a virtual dataset "
                              "(it maps other files); only data inside the file is read")
    if plist.get_external_count() > 0:
        raise UnsafeFileError(f"{name}: refused, HDF5 dataset {where} stores its data in an "
                              "external file; only data inside the file is read")
    for index in range(plist.get_nfilters()):
        code = plist.get_filter(index)[0]
        if code not in BUILTIN_FILTERS:
            raise UnsafeFileError(f"{name}: refused, HDF5 dataset {where} uses filter {code}, "
                                  "which would load a plugin; built-in filters only")
    if dataset.shape is not None:
        check_tensor_shape(name, where, dataset.shape, dataset.dtype.itemsize, limits)


def open_h5(source: Any, name: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Open an HDF5 file or file object read-only and :func:`check_h5` it.

    Returns
    -------
    h5py.File
        To be used as a context manager by the caller.

    Raises
    ------
    UnsupportedFileError
        If it is not an HDF5 file (one line, the library's reason in brackets).
    UnsafeFileError
        See :func:`check_h5`.
    """
    import h5py

    try:
        h5file = h5py.File(source, "r")
    except _H5_ERRORS as err:
        raise UnsupportedFileError(f"{name}: not a readable HDF5 file ({describe_error(err)})") from err
    try:
        check_h5(h5file, name, limits)
    except _H5_ERRORS as err:
        h5file.close()
        raise UnsupportedFileError(f"{name}: corrupt HDF5 file ({describe_error(err)})") from err
    except BaseException:
        h5file.close()
        raise
    return h5file

