"""tensorflow-datasets builders for the real data (manual download, ArrayRecord, no tensorflow).

Importing this package registers the builders with tfds under these names:
  video_folders  generic videos / frame folders cut into clips (magnifier pretraining)
  casme2, samm, smic, casme3   micro-expression sets (evaluation only), in their published layouts

Prepare once (reads manual_dir, writes ArrayRecord under data_dir):
  from data_pipelines import tfds_builders
  b = tfds_builders.Casme2(data_dir=DATA, config="face256")
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=MANUAL))
Read with data_pipelines.real_data (tfds.data_source + grain), never tf.data.
"""

from data_pipelines.tfds_builders.casme2 import Casme2
from data_pipelines.tfds_builders.casme3 import Casme3
from data_pipelines.tfds_builders.common import MalformedDataError
from data_pipelines.tfds_builders.micro_base import MicroConfig
from data_pipelines.tfds_builders.samm import Samm
from data_pipelines.tfds_builders.smic import Smic, SmicConfig
from data_pipelines.tfds_builders.video_folders import VideoFolders, VideoFoldersConfig

MICRO_EXPRESSION_BUILDERS = {"casme2": Casme2, "samm": Samm, "smic": Smic, "casme3": Casme3}

__all__ = ["Casme2", "Casme3", "Samm", "Smic", "SmicConfig", "MicroConfig", "VideoFolders",
           "VideoFoldersConfig", "MalformedDataError", "MICRO_EXPRESSION_BUILDERS"]
