from .build import (CaptionsThenImages, TextImagePairs, build_feature_loader,
                    build_text_image_test_loader, build_text_image_train_loader)
from .datasets import (CUHKPEDES, ICFGPEDES, DatasetError, ImageRecord, RSTPReid, SyntheticPedes,
                       TextImageDataset, TextImageJSON, build_dataset, dataset_root, load_image,
                       parse_test_name)
from .samplers import EpochPairSampler, KindAwareBatchSampler, PseudoIdentitySampler
from .synthetic import SyntheticSpec, ensure_synthetic_dataset, generate_synthetic_dataset
from .tokenizer import CaptionTokenizer, build_tokenizer
