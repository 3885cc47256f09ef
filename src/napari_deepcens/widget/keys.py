"""Keys of the metadata this plugin writes on napari layers (shared by the dock's tabs)."""

#: the layer holds hand edits not yet kept elsewhere
EDITED_KEY = "deepcens_edited"
#: how the labels were made: model, weights, thresholds, diameter, time
PROVENANCE_KEY = "deepcens_provenance"
#: id() of the image layer the labels were computed from
SOURCE_KEY = "deepcens_source"
#: class name of a multi-class model's labels layer
CLASS_KEY = "deepcens_class"
#: a boxes layer holds several classes' boxes (one labels layer each)
MULTI_KEY = "deepcens_multi_class"
