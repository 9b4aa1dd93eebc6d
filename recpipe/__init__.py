"""recpipe: a distributed batch recommender for teams that run Spark and Airflow."""

__version__ = "0.1.0"
