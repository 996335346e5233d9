"""DukeMTMC-reID (Zheng et al., ICCV 2017; from Ristani et al.'s DukeMTMC), with Lin et al.'s attributes.

Same layout as Market-1501 (``bounding_box_train/``, ``query/``, ``bounding_box_test/``, in a folder or the
distribution zip); file names are ``PPPP_cC_fFFFFFFF.jpg`` (person, camera 1-8, frame). The attributes
come from ``duke_attribute.mat`` (23 fields: gender, top, boots, hat, backpack, bag, handbag, shoes, 8
upper and 7 lower colours; field order differs between its train and test structs).
"""

from __future__ import annotations

import re

from .market1501 import ReidFolderDataset


class DukeMTMCReID(ReidFolderDataset):
    """DukeMTMC-reID: 1,404 identities + 408 distractors, 8 cameras; 16,522 / 2,228 / 17,661 images."""

    name = "dukemtmc"
    description = (
        "DukeMTMC-reID (Zheng et al. 2017): 1,812 ids, 8 cameras, 36,411 boxes; Lin et al. attributes"
    )
    title = "DukeMTMC-reID"
    name_pattern = re.compile(r"(?P<pid>\d+)_c(?P<camid>\d+)_f(?P<frame>\d+)")
    name_format = "PPPP_cC_fFFFFFFF.jpg"
    attribute_file = "duke_attribute.mat"
