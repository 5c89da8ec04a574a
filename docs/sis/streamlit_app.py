"""Main file of fissure's app in Streamlit in Snowflake (see the README, "The inspector's app").

The app reads models and photos through the app's own Snowpark session and writes nothing
outside the temporary folder. Set the checkpoint the Inspect page opens with below (any
other can be typed or uploaded in the page).
"""

from fissure.app.shell import AppSettings, run_app

run_app(AppSettings(checkpoint="@DB.SCHEMA.STAGE/models/best.pt"))
