<?php
/**
 * Plugin Name: Pretty permalinks behind txfastcgi
 * Description: Tells WordPress that the web server rewrites addresses.
 *
 * WordPress offers permalinks without "/index.php/" only behind web
 * servers it recognises from SERVER_SOFTWARE (Apache, nginx, LiteSpeed,
 * IIS). txfastcgi rewrites as they do: every address that names no file
 * goes to index.php.
 */
add_filter('got_url_rewrite', '__return_true');
