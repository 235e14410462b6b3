"""Model families: the one protocol (:class:`ModelFamily`) through which arkern samples, saves and loads
every kind of model, and the registry of the built-in families (WaveNet, PixelCNN, Gated PixelCNN,
PixelCNN++, and user models built on :class:`arkern.models.pixelcnn.CategoricalImageModel`)."""

from arkern.families.base import (
    METHODS,
    ModelFamily,
    checkpoint_model_type,
    checkpoint_type_name,
    checkpoint_type_names,
    families,
    family_of,
    register_family,
)
from arkern.families.image import CategoricalImageFamily, ImageFamily, draw_noise
from arkern.families.pixelcnn import GatedPixelCNNFamily, PixelCNNFamily
from arkern.families.pixelcnnpp import PixelCNNppFamily
from arkern.families.wavenet import WaveNetFamily

for _family in (CategoricalImageFamily(), WaveNetFamily(), PixelCNNFamily(), GatedPixelCNNFamily(),
                PixelCNNppFamily()):
    register_family(_family)

__all__ = ["METHODS", "ModelFamily", "ImageFamily", "register_family", "family_of", "families",
           "checkpoint_model_type", "checkpoint_type_name", "checkpoint_type_names", "draw_noise",
           "WaveNetFamily", "PixelCNNFamily", "GatedPixelCNNFamily", "PixelCNNppFamily", "CategoricalImageFamily"]
